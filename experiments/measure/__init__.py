"""Measuring tools: speed against a bare loop (`benchmark`), the GPU check, the SyncBN check."""
