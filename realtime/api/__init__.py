"""The HTTP publish API: tokens (`tokens`), `POST /api/publish` (`publish`) and its OpenAPI
document (`openapi`)."""
