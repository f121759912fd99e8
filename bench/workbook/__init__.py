"""The tool that draws docs/workbook.png: the operators' workbook (infra/app/workbook.json) over a local night.

Two steps (docs/operations.md, "The workbook"):

- :mod:`bench.workbook.night` records the real broker against the stand-ins for a simulated night, as
  the ``traces`` and ``customMetrics`` rows Application Insights would hold
  (``python -m bench.workbook record <log.jsonl>``);
- :mod:`bench.workbook.panels` runs each workbook panel's query logic over those rows and draws them
  (``python -m bench.workbook render <log.jsonl> docs/workbook.png``).
"""
