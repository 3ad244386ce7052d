"""PPO and its group-baseline relatives: advantages, KL control (the driver loop comes later)."""
