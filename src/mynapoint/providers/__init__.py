"""Payment-service providers: who they are, and what their users charge, buy and refund."""
