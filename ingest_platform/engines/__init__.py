"""The engine contract and the protocol both engines share (docs/DESIGN.md §2, §4).

``runner.py`` picks a dataset's engine and runs it; ``report.py`` is what a run returns; ``run_plan.py`` and
``offset_ranges.py`` turn the table's ledger and the topic's watermarks into the offsets a run reads;
``changes.py`` defines change records (positions, last change per key, MERGE clauses) once for both engines.
The engines themselves live beneath: ``embedded/`` and ``spark/``.
"""
