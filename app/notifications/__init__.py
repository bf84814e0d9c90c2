"""Delivery notifications: the DN hook, its group-commit writer, and the DN list."""
