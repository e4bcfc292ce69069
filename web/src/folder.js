// Reading what was dropped or picked: directory entries walked recursively in the browser
// (webkitGetAsEntry), each file with the path it has inside the dropped folder.

function readAll(reader) {
  // readEntries answers at most ~100 entries per call: call it until it answers none.
  return new Promise((resolve, reject) => {
    const out = [];
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) return resolve(out);
      out.push(...batch);
      next();
    }, reject);
    next();
  });
}

function fileOf(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

async function walk(entry, prefix, onFile) {
  if (entry.name.startsWith(".")) return;
  if (entry.isFile) {
    const file = await fileOf(entry);
    onFile(file, prefix + entry.name);
  } else if (entry.isDirectory) {
    const children = await readAll(entry.createReader());
    children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const child of children) await walk(child, `${prefix}${entry.name}/`, onFile);
  }
}

export async function filesOfDrop(dataTransfer, onFile) {
  const entries = [];
  for (const item of dataTransfer.items) {
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    if (entry) entries.push(entry);
  }
  if (!entries.length) {
    for (const file of dataTransfer.files) onFile(file, file.name);
    return;
  }
  for (const entry of entries) await walk(entry, "", onFile);
}

export function filesOfInput(input, onFile) {
  for (const file of input.files) {
    if (file.name.startsWith(".")) continue;
    onFile(file, file.webkitRelativePath || file.name);
  }
}
