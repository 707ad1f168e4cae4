"""vipo.masks"""
