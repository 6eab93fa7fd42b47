// Small helpers every page's script shares. A page and its script ship together in one
// binary, so an element the script expects and the page lacks is a bug: it throws at once,
// naming the element, instead of failing later on a null.

/** The element with `id`, checked to be a `kind` (an `HTMLElement` when no kind is given). */
export function byId<T extends HTMLElement = HTMLElement>(
  id: string,
  kind?: { new (): T; prototype: T },
): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`the page has no element #${id}`);
  const wanted: { new (): Element; prototype: Element; name: string } = kind ?? HTMLElement;
  const tag = element.tagName.toLowerCase();
  if (!(element instanceof wanted)) {
    throw new Error(`#${id} is a ${tag}, not a ${wanted.name}`);
  }
  return element as T;
}

/** The first element under `root` that matches `selector`, checked to be a `kind`. */
export function query<T extends Element = HTMLElement>(
  root: ParentNode,
  selector: string,
  kind?: { new (): T; prototype: T },
): T {
  const element = root.querySelector(selector);
  if (element === null) throw new Error(`no element matches ${selector}`);
  const wanted: { new (): Element; prototype: Element; name: string } = kind ?? HTMLElement;
  if (!(element instanceof wanted)) throw new Error(`${selector} is not a ${wanted.name}`);
  return element as T;
}

/** What went wrong, in words, whatever was thrown. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
