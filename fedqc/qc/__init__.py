"""Quality control of the data a travelling model learns from (method and evidence: docs/qc.md).

``stats`` (AUROC, standard errors, confusion rates), ``criteria`` (how an update or a
site is judged), ``policy`` (the flag → revisit → eliminate state machine), ``ledger`` (its per-scan
ledger and event log), ``gate`` (the
interface every gate implements: what it receives, decides and counts; QC's hop
statuses), ``search`` (how a rejected visit is narrowed down to scans), ``verification``
(judge an update after training) and ``screening`` (check a site's data before it
trains), ``scans`` (the per-scan checks, one registered class each), ``audit_stage``
(the sites' image checks applied), ``logs`` (the arm's files), ``arm`` (a QC arm's visits) and
``detection`` (scoring against ground truth). Nothing here imports torch or Flower.
"""
