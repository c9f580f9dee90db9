"""Sample data: a synthetic e-commerce catalogue, users and behaviour stream (files under
``data/sample`` and a producer for ``recsys sample``)."""
