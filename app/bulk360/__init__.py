"""Everything about the Bulk360 provider: client, codes, segments, simulator."""
