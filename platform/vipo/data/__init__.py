"""vipo.data"""
