"""vipo.train"""
