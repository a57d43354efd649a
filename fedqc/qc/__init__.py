"""Quality control of the data a travelling model learns from (method and evidence: docs/qc.md).

``stats`` (AUROC, standard errors, confusion rates), ``criteria`` (how an update or a
site is judged), ``policy`` (the flag → revisit → eliminate state machine), ``search``
(how a rejected visit is narrowed down to scans), ``verification`` (judge an update
after training) and ``screening`` (check a site's data before it trains), ``audit``
(image-level checks), ``arm`` (a QC arm's visits and logs) and ``detection`` (scoring
against ground truth). Nothing here imports torch or Flower.
"""
