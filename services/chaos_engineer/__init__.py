"""The Phoenix chaos-engineer service.

Chaos experiments with a steady-state hypothesis, automatic abort and a report.
"""
