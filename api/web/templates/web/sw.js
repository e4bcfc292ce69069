// RelayPACS service worker: the app's shell (content-hashed scripts, styles, icon) for offline
// starts. Never pages, never /api, never photos: nothing of a patient is stored by it.
const CACHE = {{ cache_name|tojson }};
const SHELL = {{ shell|tojson }};

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((key) => key !== CACHE).map((key) => caches.delete(key)))).then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !SHELL.some((url) => request.url.endsWith(url))) return;
  event.respondWith(caches.match(request).then((hit) => hit || fetch(request)));
});
