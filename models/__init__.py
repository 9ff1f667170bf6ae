"""Pure domain: money and credits, the catalog, pricing, errors and the table definitions. No I/O."""
