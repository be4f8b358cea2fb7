"""Training: the model (nerfacto + feature field), the trainer loop, the online session, rendering."""
