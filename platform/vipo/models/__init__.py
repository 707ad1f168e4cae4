"""vipo.models"""
