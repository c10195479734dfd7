"""Quality metrics for predicted masks against ground truth, and A/B reports (`toonq eval`).

`metrics` holds the pure NumPy metric functions, `dataset` pairs files by stem, `runner` scores
prediction folders or models over a dataset, `comparison` tests paired differences and `report`
writes the A/B Markdown report, chart and contact sheet.
"""
