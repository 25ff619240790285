"""The training runtime of distillation: the run's configuration (config, recipes, the student spec), the loop every
stage shares, the stages themselves, checkpoints, schedules, the separate student, LoRA recovery and the teacher
cache. ``training.distill.run`` is the whole run, top to bottom."""
