// The server's JSON (monitor.codec): non-finite floats travel as {"$float": "nan" | "inf" | "-inf"}
// because JSON has no NaN or Infinity; bytes as {"$bytes": base64}, left as they are here.
const NON_FINITE = { nan: NaN, inf: Infinity, "-inf": -Infinity };

function revive(_key, value) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$float" && value.$float in NON_FINITE) return NON_FINITE[value.$float];
  }
  return value;
}

export function parse(text) {
  return JSON.parse(text, revive);
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// GET a REST route; an error status raises HttpError with the server's message.
export async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = parse(await response.text());
  if (!response.ok) throw new HttpError(response.status, (body && body.error) || response.statusText);
  return body;
}
