"""Blind A/B review: people compare two model versions; their judgments become statistics and DPO pairs.

    rubrics  the role's criteria, each scored 1-5 per response
    store    the session: one SQLite file (WAL) holding items, both answers, raters and judgments
    create   generate both sides' answers once and write a new session
    stats    sign test, t intervals, Cohen's kappa, Krippendorff's alpha (Wilson comes from eval.stats)
    app      the rating page and its JSON API (Starlette), with per-rater tokens
    report   the analysis, a markdown report with a chart
    pairs    judged items as DPO preference pairs
"""
