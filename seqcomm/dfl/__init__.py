"""Decision-focused world model and its implicit gradient (docs/method.md §3)."""
