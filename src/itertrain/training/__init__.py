"""Training: trainer (the Recovering mixin every Trainer itertrain runs carries: commits, resumes,
stops), adapters (--use_peft), objectives (what an iteration trains with; one module each), data
(the training examples' encoding), flags (parsing that refuses in one line)."""
