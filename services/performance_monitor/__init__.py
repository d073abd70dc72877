"""The Phoenix performance-monitor service.

The pipeline's SLOs, burn-rate alerts, drift and anomaly detection.
"""
