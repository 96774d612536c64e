"""Decision-focused world model and its implicit gradient (DESIGN.md section 3)."""
