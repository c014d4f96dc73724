"""Public image catalogues and user simulations on them."""
