"""The engine: every per-record step, Flink-free.

``user_side`` and ``item_side`` are the two operators' engines (one micro-batch in, state
updates, outputs, timers and metrics out); they use ``profile``, ``recommend`` over ``model``
and ``items``, ``similarity``, ``ease``, ``ab``, ``validation``, ``privacy`` and the compiled
kernels of ``jit``. The job (``flink_jobs``), the simulator and the benchmarks call them; this
package imports only numpy, numba, orjson and ``state_schemas``.
"""
