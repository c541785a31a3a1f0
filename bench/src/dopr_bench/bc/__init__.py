"""The behavior-cloning bench: MuJoCo control tasks (idp, hopper, walker2d, humanoid) cloned from an expert and
judged by the return of closed-loop rollouts.

Modules: ``bench`` (the Spec, tasks and a sweep's data), ``train`` (one run), ``data`` (demonstrations, Minari
datasets, rollouts), ``policy``, ``report``, ``video``, ``experts`` (LQR and PPO experts with their checkpoints).
"""
