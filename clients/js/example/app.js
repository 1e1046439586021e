// A notes list on PluresDB in the page: every note is a node `note:<time>`,
// stored in IndexedDB (reload the page: the notes stay), written as signed
// operations by this page's own peer id.
import { open } from "../src/index.js";

const db = await open("notes");
const list = document.querySelector("#notes");

async function render() {
  list.replaceChildren();
  for (const note of await db.list("note:")) {
    const item = document.createElement("li");
    item.className = note.value.done ? "done" : "";
    const done = Object.assign(document.createElement("input"), { type: "checkbox", checked: !!note.value.done });
    done.onchange = () => db.update(note.id, { done: done.checked });
    const text = Object.assign(document.createElement("span"), { textContent: note.value.text });
    const remove = Object.assign(document.createElement("button"), { textContent: "✕", title: "delete" });
    remove.onclick = () => db.delete(note.id);
    item.append(done, text, remove);
    list.append(item);
  }
  const status = await db.status();
  document.querySelector("#status").textContent = `peer ${status.peer_id} · ${Object.values(status.version_vector).reduce((a, b) => a + b, 0)} operations`;
}

document.querySelector("#add").onsubmit = async (event) => {
  event.preventDefault();
  const input = document.querySelector("#text");
  await db.put(`note:${Date.now().toString(36)}`, { text: input.value, done: false });
  input.value = "";
};

// Every stored change (from this page; from peers once it syncs) redraws.
db.watch("note:", render);
await render();
