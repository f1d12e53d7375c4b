"""What a run writes and reads back: checkpoints, run directories, metrics, records, figures, adapters, summaries.

Checkpoints (the self-describing entry ``checkpoint``, frozen pretrained parts ``frozen_parts``), run directories
(``run_dirs``), each pass's accounting and metrics JSON (``accounting``, ``metrics_json``), the scored test records
(``scored_records``), figures, Qwen2-Audio adapter directories (``adapters``) and experiment summaries (``summary``).

Beside ``models`` in the import order: it never imports ``cli``; file names are in :mod:`.names`.
"""
