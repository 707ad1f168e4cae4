"""vipo.tune"""
