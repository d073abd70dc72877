"""The Phoenix cost-optimizer service.

The cost model, per-tenant budgets and chargeback, what-if recommendations and the feedback
controller that picks the optimisation profile.
"""
