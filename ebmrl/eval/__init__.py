"""Evaluation (method.md section 5): the VEG/SPC/CN judge (listwise and pairwise), the
automatic metrics, zero-shot VideoQA, and an offline HTML report.

Modules, one job each: ``outputs`` (what a system said), ``generation`` (each system's
greedy outputs, cached), ``judge`` and ``pairwise`` (the LLM/VLM judge), ``text_metrics``
and ``auto_metrics`` (BERTScore, ROUGE-L, CLIPScore, format, length, distinct-n),
``evaluation`` (putting them together, summaries), ``videoqa`` (benchmarks), ``svg`` and
``report`` (the page). The stages ``ebmrl evaluate`` and ``ebmrl videoqa`` are the edges.
"""
