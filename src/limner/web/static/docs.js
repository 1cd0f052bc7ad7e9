// The interactive API documentation at /docs: Swagger UI, served from limner's own package (no CDN, so it
// works offline), started here rather than in an inline script so the page keeps the strict CSP.
const target = document.getElementById("swagger-ui");
window.SwaggerUIBundle({
  url: document.body.dataset.openapiUrl,
  domNode: target,
  deepLinking: true,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
