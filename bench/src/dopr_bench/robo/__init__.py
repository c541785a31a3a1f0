"""Image-based manipulation bench on robosuite (``dopr-bench run robo TASK``), in the separate ``.venv-robo``.

Scripted experts (``lift``, ``stack``) write demonstrations in robomimic's HDF5 layout; a small conv encoder
with a flow-matching action-chunk head is cloned from them with each arm, and its EMA weights are rolled out
in robosuite. ``--dataset PATH.hdf5`` reads a robomimic dataset instead. Needs robosuite 1.5.2 with mujoco 3.3.0
(``scripts/setup-robo``).
"""
