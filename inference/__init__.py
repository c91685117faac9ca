"""The Modal inference app (Qwen-Image-Edit + LoRA); importable and testable without a GPU or Modal."""
