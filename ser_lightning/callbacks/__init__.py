"""Lightning callbacks of a run: guards, pre-emption, curriculum, prediction writing, ``hp_metric``, console.

Non-finite guards (``guards``), pre-emption (``preemption``), the entropy curriculum (``curriculum``),
``predictions.jsonl`` (``prediction_writer``), TensorBoard's ``hp_metric`` (``hp_metric``) and the console: quiet
warnings and progress bars (``console``).

Beside ``models`` in the import order: they never import ``cli``. Import them by module (``callbacks.guards`` ...):
this package imports nothing, so a config naming one class loads only its module.
"""
