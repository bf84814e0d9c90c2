"""Outcomes: expiry of silent messages, statistics, retention (CONTRACT §4.6, §4.7)."""
