"""vipo.losses"""
