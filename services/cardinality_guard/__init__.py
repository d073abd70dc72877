"""The Phoenix cardinality-guard service.

The global cardinality view merged from every pipeline replica, explosion detection, the culprit
label, risk score and auto-remediation.
"""
