"""Hard-negative mining and cross-encoder fine-tuning (torch; optional `data` extra for InsuranceQA)."""
