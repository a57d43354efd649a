"""Quality control of the data a travelling model learns from (method and evidence: docs/qc.md).

``stats`` (AUROC, standard errors, confusion rates), ``criteria`` (how an update or a
site is judged), ``policy`` (the flag → revisit → eliminate state machine), ``gate`` (the
interface every gate implements: what it receives, decides and counts; QC's hop
statuses), ``search`` (how a rejected visit is narrowed down to scans), ``verification``
(judge an update after training) and ``screening`` (check a site's data before it
trains), ``scans`` (the per-scan checks, one registered class each), ``audit``
(image-level checks), ``logs`` (the arm's files), ``arm`` (a QC arm's visits) and
``detection`` (scoring against ground truth). Nothing here imports torch or Flower.
"""
