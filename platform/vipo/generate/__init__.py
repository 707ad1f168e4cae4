"""vipo.generate"""
