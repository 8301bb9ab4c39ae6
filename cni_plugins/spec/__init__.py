"""The CNI specification as data: error codes, the result model, spec versions and the
conversions between them. Imports nothing of ours.
"""
