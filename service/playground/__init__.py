"""The playground page's static files (HTML, JS, CSS; no build step), served by
`service.api.playground` at `/playground`."""
