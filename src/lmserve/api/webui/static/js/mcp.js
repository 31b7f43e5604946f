// MCP servers of mcp.json, switched on per conversation. GET /lmserve/mcp lists them when the
// server runs with --allow-mcp-json; the settings then show a checkbox for each, and a
// conversation with any on is answered through /v1/responses (responses.js), where the server
// offers their tools to the model and runs its calls. Names the server does not list now (an
// mcp.json changed since, a server started without the flag) stay in the conversation's
// settings, unused, rather than being dropped by the next save.

import { json } from './api.js';
import { $, fill, h } from './dom.js';

let listed = []; // [{name, transport, running}] from /lmserve/mcp
let wanted = []; // the names the conversation shown has switched on

/** Ask the server which mcp.json servers requests may use; show them. */
export async function loadMcpServers() {
  const report = await json('/lmserve/mcp');
  listed = report.allow_config ? report.servers || [] : [];
  showMcpServers(wanted);
}

/** Show the servers, those in `names` checked (the section stays hidden with none listed). */
export function showMcpServers(names) {
  wanted = [...(names || [])];
  $('mcp-servers').hidden = !listed.length;
  fill(
    $('mcp-list'),
    listed.map((server) =>
      h(
        'label',
        { class: 'mcp-server' },
        h('input', {
          type: 'checkbox', name: 'mcp_servers', value: server.name,
          checked: wanted.includes(server.name),
        }),
        h('span', { class: 'name', text: server.name }),
        h('span', { class: 'hint', text: `${server.transport}${server.running ? ', running' : ''}` }),
      ),
    ),
  );
}

/** The names switched on in the form, and those kept that the server does not list. */
export function chosenMcpServers() {
  const names = listed.map((server) => server.name);
  const checked = [...$('mcp-list').querySelectorAll('input:checked')].map((box) => box.value);
  return [...checked, ...wanted.filter((name) => !names.includes(name))];
}

/** The servers of `settings` that requests may use now: with none, chat completions answer. */
export function usableMcpServers(settings) {
  const names = listed.map((server) => server.name);
  return (settings.mcp_servers || []).filter((name) => names.includes(name));
}
