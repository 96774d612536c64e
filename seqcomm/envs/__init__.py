"""The tasks (docs/method.md §6): batched TorchRL environments that share one key contract.

Every task is chosen in a config by its full class path (``data.env.class_path``), so this
package imports nothing itself: the optional backends (VMAS, StarCraft II) load only when
their task is used.

=============================== ===========================================================
module                          holds
=============================== ===========================================================
``base``                        the key contract, ``env_info`` (sizes from the specs),
                                ``MultiAgentEnv`` and ``ConfigurableEnv``
``matrix``                      ``MatrixGame``: RGMComm's one-step matrix game (§6.1)
``maze``                        ``Maze``: RGMComm's two-agent grid maze (§6.2)
``hospital``                    ``Hospital``: specialty-gated hidden risks (§6.3)
``microcombat``, ``units``      ``MicroCombat``: a SMAC-like simulator in pure torch (§6.4)
``smacv2``                      ``SMACv2Task``: real StarCraft II through TorchRL (§6.5)
``vmas``                        ``VmasTask``: VMAS scenarios with discrete actions (§6.6)
``reference``                   scripted reference policies and their evaluation
=============================== ===========================================================
"""
