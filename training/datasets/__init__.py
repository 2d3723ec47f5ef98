"""Datasets: immutable, content-hashed SFT/DPO snapshots built from reviewed candidates
(`builder.py`), and the folder format that training and evaluation jobs read
(`snapshot.py`)."""
