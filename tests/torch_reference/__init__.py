"""Test-only PyTorch reference implementations (the ground truth for numerical parity tests)."""
