"""vipo.train.recipes"""
