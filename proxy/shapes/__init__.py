"""Wire formats: how a request body is read into rows and how rows are written back, per protocol."""
