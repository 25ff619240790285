"""The lab: wave transformers trained from scratch on grokking, algorithmic tasks, recall and char-LM."""
